# The version of the bcc module python3 would import, read from its version.py: importing
# bcc loads libbcc and LLVM, seconds under emulation. Prints "none" where there is no bcc.
import importlib.util
import os
import re

spec = importlib.util.find_spec("bcc")
if spec is None or spec.loader is None or not spec.submodule_search_locations:
    print("none")
else:  # the loader reads a folder's file and a zipped egg's alike
    source = spec.loader.get_data(os.path.join(spec.submodule_search_locations[0], "version.py")).decode()
    print(re.search(r"__version__\s*=\s*['\"]([^'\"]+)", source).group(1))
