"""``python -m benchmarks.accuracy``: run the accuracy benchmark."""

from . import main

main()
