"""python-tuf's reference client (ngclient.Updater) against a Hearth hub's update repository, over mutual TLS with
a device certificate: refresh, then download and verify one target.

Usage: ngclient_hub.py HUB_URL ROOT_JSON CA_PEM CERT_PEM KEY_PEM TARGET OUT_DIR
Prints the downloaded file's path; exits non-zero (with python-tuf's error) when anything is refused.
"""
import sys
from pathlib import Path

import urllib3
from tuf.api import exceptions
from tuf.ngclient import Updater
from tuf.ngclient.fetcher import FetcherInterface

hub, root, ca, cert, key, target, out = sys.argv[1:8]


class MutualTlsFetcher(FetcherInterface):
    """Fetches with the device's certificate, trusting only the hub's CA."""

    def __init__(self):
        self.pool = urllib3.PoolManager(cert_reqs="CERT_REQUIRED", ca_certs=ca, cert_file=cert, key_file=key)

    def _fetch(self, url):
        response = self.pool.request("GET", url, preload_content=False, timeout=urllib3.Timeout(30))
        if response.status >= 400:
            response.close()
            raise exceptions.DownloadHTTPError(f"HTTP {response.status}", response.status)
        return response.stream(65536)


metadata_dir = Path(out) / "metadata"
metadata_dir.mkdir(parents=True, exist_ok=True)
updater = Updater(
    bootstrap=Path(root).read_bytes(),
    metadata_dir=str(metadata_dir),
    metadata_base_url=f"{hub}/tuf/",
    target_dir=str(Path(out) / "targets"),
    target_base_url=f"{hub}/tuf/targets/",
    fetcher=MutualTlsFetcher(),
)
(Path(out) / "targets").mkdir(parents=True, exist_ok=True)
updater.refresh()
info = updater.get_targetinfo(target)
if info is None:
    sys.exit(f"no target {target}")
path = updater.download_target(info)
print(path)
