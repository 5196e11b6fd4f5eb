"""Alertmanager's configuration for the compose stack, rendered before Alertmanager starts (service
``alertmanager-config``): ``monitoring/alertmanager/alertmanager.yml`` from git, with the URL of every
webhook receiver replaced by ``ALERTMANAGER_WEBHOOK_URL`` from the host's ``.env`` when it is set. A
receiver's URL is a secret (a Slack or paging webhook carries its token), so it never goes into git, and
a deploy that ships git's file does not overwrite it. Unset: git's file as it is (the stand-in ``notify``).

    python docker/alertmanager_config.py TEMPLATE OUTPUT

Standard library and PyYAML only (the platform image has both). Written atomically, readable by
Alertmanager's user (``nobody``) on the ``alertmanager-config`` volume only.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import yaml


def render(template: str, webhook_url: str | None) -> str:
    config = yaml.safe_load(template)
    if webhook_url:
        parts = urlsplit(webhook_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SystemExit(
                "alertmanager-config: ALERTMANAGER_WEBHOOK_URL is not an http(s) URL; set it in .env to "
                "the receiver's webhook, e.g. https://hooks.example.com/..., or leave it empty"
            )
        for receiver in config.get("receivers") or []:
            for webhook in receiver.get("webhook_configs") or []:
                webhook["url"] = webhook_url
    return yaml.safe_dump(config, sort_keys=False)


def main(template_path: str, output_path: str) -> None:
    rendered = render(Path(template_path).read_text(), os.environ.get("ALERTMANAGER_WEBHOOK_URL"))
    output = Path(output_path)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=output.parent, delete=False) as tmp:
        tmp.write(rendered)
    Path(tmp.name).chmod(0o644)
    os.replace(tmp.name, output)
    print(f"alertmanager-config: wrote {output}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    main(sys.argv[1], sys.argv[2])
