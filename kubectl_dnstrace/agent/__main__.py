"""``python3 -m kubectl_dnstrace.agent``: see kubectl_dnstrace.agent.main."""

import sys

from kubectl_dnstrace.agent.main import main

if __name__ == "__main__":
    sys.exit(main())
