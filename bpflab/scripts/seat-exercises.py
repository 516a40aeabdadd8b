"""A seat's own exercises, run in the VM from the folder of the learner's programs (user/): each
program that lab.run or lab.check synced there with the exercise.yaml that `lab.new --exercise`
wrote beside it. Prints one JSON line: name -> exercise, program, and the text of its files."""

import json
import pathlib
import re

found = {}
for marker in sorted(pathlib.Path(".").glob("*/exercise.yaml")):
    folder, number = marker.parent, re.search(r"^exercise: *(\d+)", marker.read_text(), re.MULTILINE)
    programs = [folder / f"{folder.name}{suffix}" for suffix in (".py", ".bt")]
    programs = [path for path in programs if path.is_file()]
    if number and programs:
        sources = [
            path
            for path in sorted(folder.iterdir())
            if path.suffix in (".py", ".bt", ".c", ".h") and path.name != "labkit.py"
        ]
        found[folder.name] = {
            "exercise": int(number[1]),
            "program": programs[0].name,
            "source": "\n".join(path.read_text(errors="replace") for path in sources),
        }
print(json.dumps(found))
