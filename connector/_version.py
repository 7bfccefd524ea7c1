"""The package's version, in a module of its own.

Hatchling reads it from here (``[tool.hatch.version]``), and the modules that print or send it
(the CLI's ``--version``, the HTTP client's User-Agent, the manifest, Airflow's provider info)
import it from here, so that none of them imports the package root for one string.
"""

__version__ = "0.1.0"
