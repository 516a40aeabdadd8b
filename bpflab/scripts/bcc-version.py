# The version of the bcc module python3 would import, read from its source: importing bcc
# loads libbcc and LLVM, seconds under emulation. Prints "none" where there is no bcc.
import importlib.util
import os
import re

spec = importlib.util.find_spec("bcc")
if spec is None or spec.loader is None or not spec.submodule_search_locations:
    print("none")
else:
    found = None
    for name in ("version.py", "__init__.py"):  # BCC's own layout first
        try:  # the loader reads a folder's file and a zipped egg's alike
            source = spec.loader.get_data(os.path.join(spec.submodule_search_locations[0], name)).decode()
        except OSError:
            continue
        found = found or re.search(r"__version__\s*=\s*['\"]([^'\"]+)", source)
    print(found.group(1) if found else "unknown")
