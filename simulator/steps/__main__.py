"""``python -m simulator.steps``: print the step-kind contract (the generated section of
docs/PROGRAM.md) from the typed parameter classes."""
from simulator.steps.contract import contract_markdown

print(contract_markdown(), end="")
