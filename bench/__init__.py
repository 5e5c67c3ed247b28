"""Benchmarks of the proxy against a bare aiohttp handler, nginx and Varnish on this machine.

Run ``python -m bench --mode all --scale full`` from the repository root; results land in
``bench/results/`` (``results.md``, ``results.json``, ``fleet.png``). See ``bench/README.md``.
"""
