"""A stand-in for a Fabric connection that records what a stage sends and answers from a script.

For the fast tests of a stage's logic (what it runs, what it skips, what it records);
the real-VM tests remain the proof that the commands work.
"""

import re
from types import SimpleNamespace


class RecordingConnection:
    """`answers`: (regular expression, output[, exit status]) tried in order on each command."""

    def __init__(self, answers=(), drop_after: str = ""):
        self.answers = list(answers)
        self.drop_after = drop_after  # the connection drops once a command matching this has run
        self.commands: list[str] = []
        self.uploads: list[str] = []
        self.requests: list[str] = []
        self.closed = False
        # paramiko's side, for programs run on a channel of their own and keepalives
        transport = SimpleNamespace(
            open_session=self.open_session,
            is_active=lambda: not self.closed,
            global_request=lambda *_args, **_options: None,
        )
        self.client = SimpleNamespace(get_transport=lambda: transport)

    def answer(self, command):
        self.commands.append(command)
        if self.drop_after and re.search(self.drop_after, command):
            self.closed = True
        for pattern, *answer in self.answers:
            if re.search(pattern, command):
                return answer[0], (answer[1] if len(answer) > 1 else 0)
        return "", 0

    def run(self, command, out_stream=None, **_options):
        output, status = self.answer(command)
        if out_stream is not None:
            out_stream.write(output)
        return SimpleNamespace(exited=status, stdout=output)

    def open_session(self):
        return RecordingChannel(self)

    def put(self, local, remote):
        self.uploads.append(remote)

    def close(self):
        self.closed = True

    def __enter__(self):
        return self

    def __exit__(self, *_exception):
        self.close()

    def ran(self, pattern: str) -> list[str]:
        return [command for command in self.commands if re.search(pattern, command)]


class RecordingHost:
    """A host whose new connections are `later` in turn, then the first one again."""

    def __init__(self, connection: RecordingConnection, name: str = "lab", later=()):
        self.name, self.connection, self.later = name, connection, list(later)

    def connect(self):
        return self.later.pop(0) if self.later else self.connection

    def console_note(self):
        return ""  # no serial console: an inventory host's kind


class RecordingChannel:
    """A session channel: its command's scripted output arrives in one block, then the end."""

    def __init__(self, connection: RecordingConnection):
        self.connection, self.output = connection, b""

    def set_combine_stderr(self, _combine):
        pass

    def exec_command(self, command):
        self.output = self.connection.answer(command)[0].encode()

    def recv(self, _size):
        block, self.output = self.output, b""
        return block

    def sendall(self, data):
        self.connection.requests.append(data.decode())
