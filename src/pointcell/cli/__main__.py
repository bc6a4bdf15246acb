"""``python -m pointcell.cli`` (what ``torchrun -m pointcell.cli train ...`` runs)."""

from pointcell.cli import main

main()
