"""rtune: Reflection-Tuning made real."""

from .errors import ConfigError, InputError, RtuneError
from .io import read_records, write_records
from .records import Record
from .store import RunStore

__version__ = "0.2.0"

__all__ = ["ConfigError", "InputError", "Record", "RtuneError", "RunStore", "read_records",
           "write_records", "__version__"]
