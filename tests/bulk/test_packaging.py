"""Ray is an optional extra: the server's modules never import it."""

import subprocess
import sys

SERVER_IMPORTS = "import server.app, server.cli, server.runtime"


def test_the_server_imports_no_ray():
    code = f"import sys; {SERVER_IMPORTS}; loaded = [m for m in sys.modules if m.split('.')[0] in ('ray', 'bulk')]; print(loaded); sys.exit(bool(loaded))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr[-2000:]
