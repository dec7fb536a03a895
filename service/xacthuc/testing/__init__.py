"""xacthuc.testing: a kit for platforms that integrate xacthuc, to test their own code.

- `InProcessServer`: a real xacthuc gRPC server (grpc.aio, memory store) on 127.0.0.1 and
  a free port, run on a thread of its own, with a platform and an auditor API key, and
  connected clients (`client()`, `async_client()`).
- `CapturingSmsSender`: the SMS channel of that server; `last_code(number)` reads the code.
- Test numbers: `test_number(n)` (the range +84 95x xxx xxx, see `xacthuc.domain.fictional`)
  is never texted and accepts the fixed `TEST_NUMBER_CODE` (configurable).
- pytest fixtures: add `pytest_plugins = ["xacthuc.testing.pytest_plugin"]` to your
  top-level conftest.py (README, "Testing your integration").

Needs the `server` extra (`pip install 'xacthuc[testing]'` brings it and pytest).
"""

from xacthuc.domain.fictional import TEST_NUMBER_PREFIX, is_test_number, test_number
from xacthuc.testing.server import DEFAULT_TEST_NUMBER_CODE as TEST_NUMBER_CODE
from xacthuc.testing.server import InProcessServer
from xacthuc.testing.sms import CapturingSmsSender, code_in

__all__ = [
    "TEST_NUMBER_CODE",
    "TEST_NUMBER_PREFIX",
    "CapturingSmsSender",
    "InProcessServer",
    "code_in",
    "is_test_number",
    "test_number",
]
