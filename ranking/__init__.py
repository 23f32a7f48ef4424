"""Pure NumPy ranking math shared by evaluation, training, serving and the index: ranks and
retrieval metrics (``metrics``), score fusion (``fusion``). No I/O, no models."""
