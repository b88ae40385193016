# Copyright: contributors to runbooks.incident
# GNU General Public License v3.0+ (see LICENSES/GPL-3.0-or-later.txt or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Deactivate every valid authorization the lineage's ACME account holds, so that the next order must pass a
challenge again. Runs on the app host with certbot's own python (python3-acme), trusting the CA as certbot does:
REQUESTS_CA_BUNDLE=<CA> /usr/bin/python3 - <renewal conf>.

pebble reuses a valid authorization (one hour) for `rand.Intn(100) > PEBBLE_AUTHZREUSE` orders: even at 0, one order
in a hundred skips the challenge, and a case that expects a broken port 80 to fail the renewal would pass by luck."""
import configparser
import glob
import os
import sys

import josepy
from acme import client, messages

conf = configparser.ConfigParser()
conf.read_string("[top]\n" + open(sys.argv[1], encoding="utf-8").read())
params = conf["renewalparams"]
config_dir = os.path.dirname(os.path.dirname(os.path.abspath(sys.argv[1])))  # <config dir>/renewal/<name>.conf
(account_dir,) = glob.glob(f"{config_dir}/accounts/*/*/{params['account']}")
with open(f"{account_dir}/private_key.json", encoding="utf-8") as key_file:
    key = josepy.JWK.json_loads(key_file.read())
with open(f"{account_dir}/regr.json", encoding="utf-8") as regr_file:
    regr = messages.RegistrationResource.json_loads(regr_file.read())
net = client.ClientNetwork(key, account=regr, verify_ssl=True, user_agent="molecule")
acme = client.ClientV2(messages.Directory.from_json(net.get(params["server"]).json()), net)

deactivated = 0
page = acme._post(regr.uri, None).json()["orders"]  # pylint: disable=protected-access
while page:
    response = acme._post(page, None)  # pylint: disable=protected-access
    for order in response.json()["orders"]:
        for url in acme._post(order, None).json()["authorizations"]:  # pylint: disable=protected-access
            authz = messages.Authorization.from_json(acme._post(url, None).json())  # pylint: disable=protected-access
            if authz.status == messages.STATUS_VALID:
                acme.deactivate_authorization(messages.AuthorizationResource(body=authz, uri=url))
                deactivated += 1
    page = response.links.get("next", {}).get("url")
print(deactivated)
