"""Remotes over fsspec: objects and conditional tag writes (``store``), the remote's log of refs
(``log``), bounded reads and downloads (``guard``) and who may sign what (``trust``)."""
