"""A real FHIR client (fhirpy, from PyPI) against a running `medledger dev` node.

SMART backend services: an EdDSA client assertion signed with the demo practitioner's own key
(PyJWT + cryptography) is exchanged for a bearer token; then fhirpy creates, reads, updates and
searches (following `next` links page by page), and reads the instance history.

Usage: python test_fhir_client.py <base URL> <dev-credentials.json>
"""

import json
import sys
import time
import uuid

import jwt
import requests
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fhirpy import SyncFHIRClient

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def signing_key(key_file):
    """The Ed25519 private key in a medledger key file (`signing-seed: <64 hex>`)."""
    with open(key_file, encoding="utf-8") as f:
        for line in f:
            if line.startswith("signing-seed:"):
                return Ed25519PrivateKey.from_private_bytes(bytes.fromhex(line.split(":", 1)[1].strip()))
    raise SystemExit(f"no signing seed in {key_file}")


def token(base, identity, scope):
    url = base + "/auth/token"
    assertion = jwt.encode(
        {"iss": identity["id"], "sub": identity["id"], "aud": url, "exp": int(time.time()) + 120, "jti": str(uuid.uuid4())},
        signing_key(identity["key_file"]),
        algorithm="EdDSA",
    )
    answer = requests.post(
        url,
        data={
            "grant_type": "client_credentials",
            "scope": scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["token_type"] == "bearer" and body["scope"] == scope, body
    # The same assertion a second time is refused: it is single-use.
    replay = requests.post(
        url,
        data={"grant_type": "client_credentials", "scope": scope, "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion},
        timeout=30,
    )
    assert replay.status_code == 401 and replay.json()["error"] == "invalid_client", replay.text
    return body["access_token"]


def main():
    base, credentials_path = sys.argv[1].rstrip("/"), sys.argv[2]
    with open(credentials_path, encoding="utf-8") as f:
        credentials = json.load(f)
    alice = next(i for i in credentials["identities"] if i["label"] == "dr-alice-st-marys")
    patient_id = next(
        r["record_id"] for r in credentials["records"] if r["patient"] == "patient-01" and r["resource_type"] == "Patient"
    )
    client = SyncFHIRClient(base + "/fhir", authorization="Bearer " + token(base, alice, "user/*.cruds"))

    # Create.
    observation = client.resource(
        "Observation",
        status="final",
        category=[{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        code={"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        subject={"reference": f"Patient/{patient_id}"},
        effectiveDateTime="2026-11-20T08:00:00Z",
        valueQuantity={"value": 5.4, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
    )
    observation.save()
    assert observation.id and len(observation.id) == 64, observation.id
    assert observation["meta"]["versionId"] == "1", observation["meta"]

    # Read, then update (PUT of the resource as read).
    read = client.reference("Observation", observation.id).to_resource()
    assert read["code"]["coding"][0]["code"] == "2345-7"
    read["valueQuantity"]["value"] = 6.1
    read.save()
    assert read["meta"]["versionId"] == "2", read["meta"]

    # Search with paging: fhirpy follows the server's `next` links. (A create or update is
    # answered once committed, so what was just written is found.)
    search = client.resources("Observation").search(patient=f"Patient/{patient_id}").limit(2)
    first_page = search.fetch()
    assert len(first_page) == 2, len(first_page)
    everything = search.fetch_all()
    ids = [o.id for o in everything]
    assert observation.id in ids, ids
    assert len(ids) == len(set(ids)) and len(ids) > 2, ids
    glucose = client.resources("Observation").search(patient=f"Patient/{patient_id}", code="http://loinc.org|2345-7").fetch_all()
    assert [o.id for o in glucose] == [observation.id], [o.id for o in glucose]

    # History of the instance: both versions, newest first.
    history = client.execute(f"Observation/{observation.id}/_history", method="get")
    versions = [e["resource"]["meta"]["versionId"] for e in history["entry"]]
    assert history["type"] == "history" and versions == ["2", "1"], versions

    # A transaction Bundle: a new patient (registered by the node), an encounter and a lab that
    # reference it by urn:uuid, and a practitioner for the directory. All or nothing.
    pat, enc = "urn:uuid:9a1f0c52-3b7e-4c61-9d2a-5f8e1c0b7a01", "urn:uuid:9a1f0c52-3b7e-4c61-9d2a-5f8e1c0b7a02"
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": pat, "resource": {"resourceType": "Patient", "name": [{"family": "Clienttest"}], "gender": "other"},
             "request": {"method": "POST", "url": "Patient"}},
            {"fullUrl": enc, "resource": {"resourceType": "Encounter", "status": "finished",
                                          "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                                          "subject": {"reference": pat}},
             "request": {"method": "POST", "url": "Encounter"}},
            {"resource": {"resourceType": "Observation", "status": "final",
                          "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
                          "code": {"coding": [{"system": "http://loinc.org", "code": "718-7"}]},
                          "subject": {"reference": pat}, "encounter": {"reference": enc},
                          "valueQuantity": {"value": 13.2, "unit": "g/dL"}},
             "request": {"method": "POST", "url": "Observation"}},
            {"resource": {"resourceType": "Practitioner", "name": [{"family": "Clienttest"}],
                          "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "9999912345"}]},
             "request": {"method": "POST", "url": "Practitioner"}},
        ],
    }
    answer = client.execute("", method="post", data=transaction)
    assert answer["type"] == "transaction-response", answer
    statuses = [e["response"]["status"] for e in answer["entry"]]
    assert statuses == ["201 Created"] * 4, statuses
    new_patient = answer["entry"][0]["response"]["location"].split("/")[1]
    labs = client.resources("Observation").search(patient=f"Patient/{new_patient}").fetch_all()
    assert len(labs) == 1 and labs[0]["encounter"]["reference"].startswith("Encounter/"), labs
    # A broken one writes nothing and says which entry.
    broken = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": pat, "resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Encounter", "status": "finished",
                      "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                      "subject": {"reference": "urn:uuid:00000000-0000-4000-8000-00000000dead"}},
         "request": {"method": "POST", "url": "Encounter"}},
    ]}
    refused = requests.post(f"{base}/fhir", json=broken, timeout=30,
                            headers={"Authorization": client.authorization, "Content-Type": "application/fhir+json"})
    assert refused.status_code == 400 and "Bundle.entry[1]" in refused.text, refused.text

    # Consent decides: another patient's token gets the 404 OperationOutcome of an id that does
    # not exist, not the data (nor a sign that the record is real).
    stranger = next(i for i in credentials["identities"] if i["label"] == "patient-02")
    denied = requests.get(
        f"{base}/fhir/Observation/{observation.id}",
        headers={"Authorization": "Bearer " + token(base, stranger, "patient/*.rs")},
        timeout=30,
    )
    assert denied.status_code == 404 and denied.json()["issue"][0]["code"] == "not-found", denied.text
    print(f"fhirpy: created, read, updated, searched {len(ids)} Observations in pages of 2, read a history of 2 "
          f"versions; a transaction Bundle of 4 created a new patient's records; a broken one refused "
          f"({refused.status_code}); another patient's read refused ({denied.status_code})")
    print("fhir client test: OK")


if __name__ == "__main__":
    main()
