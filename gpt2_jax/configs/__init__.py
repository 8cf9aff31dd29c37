"""Config definitions shipped inside the package: the default run (shakespeare.py) and GPT-2 at
its sizes (gpt2.py), which the files under configs/ return."""
