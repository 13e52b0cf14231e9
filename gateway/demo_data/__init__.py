"""Package data of ``callvault demo``: the sample call it streams (``sample_call.wav``) and
its script (``sample_call.txt``). A package, so that ``importlib.resources`` finds the files
in an installed wheel as well as in a checkout; both are made by bench/make_sample_call.py."""
