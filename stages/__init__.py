"""DVC stage entry points: ``python -m stages.<name>``. Each reads its params, calls the library, writes its outs."""
