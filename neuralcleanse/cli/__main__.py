"""`python -m neuralcleanse.cli`, as the console script."""
from neuralcleanse.cli import main

main()
