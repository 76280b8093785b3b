"""Side-by-side benchmarks of mvc_magics against Keras save/load, safetensors and raw file I/O.

Run ``python -m benchmarks --quick`` (minutes) or ``--full`` (adds the ~1 GB model and 10,000
versions); ``--smoke`` is the seconds-long run the test suite uses so this code cannot rot.
Every figure is reported as a ratio against peers measured back to back in the same run, since
absolute times on a shared machine mean little.
"""
