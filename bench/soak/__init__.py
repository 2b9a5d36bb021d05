"""``python -m bench soak``: a long mixed load through one proxy worker, watching its memory, its file
descriptors and every body that reaches the upstream (bench/README.md, "The soak")."""
