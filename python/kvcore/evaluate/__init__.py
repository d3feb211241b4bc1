"""``kvcore eval``: quality, memory and speed of every compression method on a real model
and real text (see docs/EVAL.md).

Modules, one job each: :mod:`.assets` (the embedded model and text packages),
:mod:`.model` (loading, GGUF conversion), :mod:`.text` (text and windows),
:mod:`.methods` (the methods and the ONE interface to the cache), :mod:`.decoding`
(a forward step),
:mod:`.perplexity`, :mod:`.needle`, :mod:`.memory`, :mod:`.runner` (all methods),
:mod:`.bars` (the issue's quality bars), :mod:`.report` (table, JSON, CSV),
:mod:`.plot` (PNG), :mod:`.settings` (run sizes), :mod:`.command` (the CLI) and
:mod:`.bench` (``kvcore bench``).
"""
