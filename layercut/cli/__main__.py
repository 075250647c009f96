"""`python -m layercut.cli`: the same as the `layercut` console script."""

from layercut.cli import main

main()
