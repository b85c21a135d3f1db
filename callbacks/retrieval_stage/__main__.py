"""``python -m callbacks.retrieval_stage build-index | retrieve ...`` (also under ``torchrun -m``)."""

from callbacks.retrieval_stage.cli import main

main()
