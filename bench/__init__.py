"""The benchmark: ``python -m bench`` (see bench/README.md). Not part of the test suite, which only runs
``python -m bench --quick`` end to end."""
