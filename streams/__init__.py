"""The event contract: schemas and validation (``schema``), topics (``topics``), dead letters
(``deadletter``), producing (``producer``), data sets (``datasets``) and replays (``replay``).

Import the submodules directly; this package imports nothing so that ``schema`` stays cheap.
"""
