"""The benchmark scripts, a package so that they share helpers (standin.py, proctree.py) by plain imports.

Run each from the repository root as a module, e.g. `python -m benchmarks.run_suite --help`; they use the
installed tumor_edge (the runtime only through its public names, `tumor_edge.runtime`) and no sys.path changes.
"""
