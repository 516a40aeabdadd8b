"""A stand-in for a Fabric connection that records what a stage sends and answers from a script.

For the fast tests of a stage's logic (what it runs, what it skips, what it records);
the real-VM tests remain the proof that the commands work.
"""

import re
from types import SimpleNamespace


class RecordingConnection:
    """`answers`: (regular expression, output[, exit status]) tried in order on each command."""

    def __init__(self, answers=()):
        self.answers = list(answers)
        self.commands: list[str] = []
        self.uploads: list[str] = []
        self.closed = False

    def run(self, command, out_stream=None, **_options):
        self.commands.append(command)
        output, status = "", 0
        for pattern, *answer in self.answers:
            if re.search(pattern, command):
                output, status = answer[0], (answer[1] if len(answer) > 1 else 0)
                break
        if out_stream is not None:
            out_stream.write(output)
        return SimpleNamespace(exited=status, stdout=output)

    def put(self, local, remote):
        self.uploads.append(remote)

    def close(self):
        self.closed = True

    def ran(self, pattern: str) -> list[str]:
        return [command for command in self.commands if re.search(pattern, command)]


class RecordingHost:
    """A host whose every new connection is the same recording connection."""

    def __init__(self, connection: RecordingConnection, name: str = "lab"):
        self.name, self.connection = name, connection

    def connect(self):
        return self.connection

    def answers(self) -> bool:
        return True
