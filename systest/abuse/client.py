"""A hostile client of the management API, and not ours: Python grpcio with stubs that protoc
made from the shipped .proto files. Each case tries one abuse against a running device and
records what came back; the test (systest/tests/api.rs) decides whether that was right. Prints
one JSON object.

usage: client.py HOST:PORT CERT_DIR BUNDLE

CERT_DIR holds ca.pem (the device CA), and NAME.pem / NAME.key for reader, operator, admin,
stranger (a client CA the device does not know) and expired (the device's client CA, expired).
"""

import json
import socket
import sys
import threading
import time

import grpc

from cairn.v1 import (
    config_pb2,
    device_pb2_grpc,
    kubernetes_pb2,
    services_pb2,
    system_pb2,
    upgrade_pb2,
)

ADDRESS, CERTS, BUNDLE = sys.argv[1], sys.argv[2], sys.argv[3]
OPTIONS = [
    # The server certificate names localhost (and 127.0.0.1); the address is a forwarded port.
    ("grpc.ssl_target_name_override", "localhost"),
    ("grpc.enable_http_proxy", 0),
    # Let the client send what the device must refuse.
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
]


def read(name):
    with open(f"{CERTS}/{name}", "rb") as f:
        return f.read()


def channel(who):
    if who is None:
        credentials = grpc.ssl_channel_credentials(root_certificates=read("ca.pem"))
    else:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read("ca.pem"),
            private_key=read(f"{who}.key"),
            certificate_chain=read(f"{who}.pem"),
        )
    return grpc.secure_channel(ADDRESS, credentials, options=OPTIONS)


def outcome(call):
    """'OK' or 'CODE: details' for one call."""
    try:
        call()
        return "OK"
    except grpc.RpcError as e:
        return f"{e.code().name}: {e.details()}"


def start(size, reboot=False):
    return upgrade_pb2.UpgradeRequest(
        start=upgrade_pb2.UpgradeStart(upload=upgrade_pb2.Upload(size=size), reboot=reboot)
    )


def chunks(data, size=256 * 1024):
    for i in range(0, len(data), size):
        yield upgrade_pb2.UpgradeRequest(chunk=data[i : i + size])


def drain(answers):
    for _ in answers:
        pass


class Stalled:
    """An upload that sends its start and `send` bytes of the bundle, then stops sending
    (without closing its side) until released."""

    def __init__(self, device, bundle, send):
        self.release = threading.Event()
        self.sent = threading.Event()
        self.done = threading.Event()

        def messages():
            yield start(len(bundle))
            yield from chunks(bundle[:send])
            self.sent.set()
            self.release.wait(120)

        self.answers = device.Upgrade(messages(), timeout=180)
        self.result = None

        def consume():
            self.result = outcome(lambda: drain(self.answers))
            self.done.set()

        self.thread = threading.Thread(target=consume)
        self.thread.start()

    def wait_sent(self):
        """Until all its bytes went out, or the call ended (refused)."""
        while not self.sent.wait(0.1):
            if self.done.is_set():
                return False
        return True

    def cancel(self):
        self.wait_sent()
        self.answers.cancel()
        self.release.set()
        self.thread.join(60)
        return self.result


def lock_free(device, bundle):
    """Whether the device takes an upgrade now: one that declares the bundle's size and sends
    nothing ends with INVALID_ARGUMENT once it holds the lock, FAILED_PRECONDITION if not."""
    got = outcome(lambda: drain(device.Upgrade(iter([start(len(bundle))]), timeout=30)))
    return not got.startswith("FAILED_PRECONDITION")


def main():
    with open(BUNDLE, "rb") as f:
        bundle = f.read()
    seen = {}

    # Who may not even talk: no certificate, another CA's, an expired one of the right CA.
    for case, who in [("no_certificate", None), ("other_ca", "stranger"), ("expired", "expired")]:
        with channel(who) as ch:
            device = device_pb2_grpc.DeviceServiceStub(ch)
            seen[case] = outcome(lambda: device.Version(system_pb2.VersionRequest(), timeout=20))

    # Every mutating call with a role below the one it needs.
    calls = {
        "ServiceRestart": lambda d: d.ServiceRestart(
            services_pb2.ServiceRestartRequest(name="cairnd"), timeout=20
        ),
        "Upgrade": lambda d: drain(d.Upgrade(iter([start(len(bundle))]), timeout=20)),
        "Rollback": lambda d: d.Rollback(system_pb2.RollbackRequest(), timeout=20),
        "Reboot": lambda d: d.Reboot(system_pb2.RebootRequest(), timeout=20),
        "Shutdown": lambda d: d.Shutdown(system_pb2.ShutdownRequest(), timeout=20),
        "ApplyConfig": lambda d: d.ApplyConfig(
            config_pb2.ApplyConfigRequest(config="{}"), timeout=20
        ),
        "ConfirmConfig": lambda d: d.ConfirmConfig(config_pb2.ConfirmConfigRequest(), timeout=20),
        "RecoveryKey": lambda d: d.RecoveryKey(system_pb2.RecoveryKeyRequest(), timeout=20),
        "Unlock": lambda d: d.Unlock(system_pb2.UnlockRequest(recovery_key="x"), timeout=20),
        "Kubeconfig": lambda d: d.Kubeconfig(kubernetes_pb2.KubeconfigRequest(), timeout=20),
    }
    operator_may = {"ServiceRestart", "Upgrade", "Rollback", "Reboot"}
    denied = {}
    for who in ["reader", "operator"]:
        with channel(who) as ch:
            device = device_pb2_grpc.DeviceServiceStub(ch)
            for name, call in calls.items():
                if who == "operator" and name in operator_may:
                    continue
                denied[f"{who} {name}"] = outcome(lambda: call(device))
    seen["denied"] = denied

    with channel("operator") as ch:
        device = device_pb2_grpc.DeviceServiceStub(ch)
        # An upload that stops halfway and is dropped: the device lets go of the slot soon.
        seen["half_upload"] = Stalled(device, bundle, len(bundle) // 2).cancel()
        began = time.monotonic()
        while not lock_free(device, bundle) and time.monotonic() - began < 60:
            time.sleep(0.2)
        seen["lock_released_s"] = round(time.monotonic() - began, 2)
        # An upgrade while another is under way; then the first one is dropped. The probe
        # above may still hold the lock for a moment: the first upload tries again until it
        # gets it.
        for attempt in range(10):
            first = Stalled(device, bundle, 1024 * 1024)
            if first.wait_sent():
                break
            first.cancel()
            time.sleep(0.5)
        time.sleep(1)
        seen["second_upgrade"] = outcome(
            lambda: drain(
                device.Upgrade(iter([start(len(bundle))] + list(chunks(bundle[:4096]))), timeout=30)
            )
        )
        seen["first_upgrade"] = first.cancel()
        began = time.monotonic()
        while not lock_free(device, bundle) and time.monotonic() - began < 60:
            time.sleep(0.2)
        # One message above the device's limit.
        seen["oversize"] = outcome(
            lambda: drain(
                device.Upgrade(
                    iter([start(len(bundle)), upgrade_pb2.UpgradeRequest(chunk=bundle[: 4 * 1024 * 1024])]),
                    timeout=60,
                )
            )
        )

    # Many connections that never speak, then a good client.
    idle = []
    host, port = ADDRESS.rsplit(":", 1)
    for _ in range(100):
        s = socket.create_connection((host, int(port)), timeout=10)
        idle.append(s)
    time.sleep(2)
    began = time.monotonic()
    with channel("reader") as ch:
        device = device_pb2_grpc.DeviceServiceStub(ch)
        seen["during_idle_flood"] = outcome(
            lambda: device.Version(system_pb2.VersionRequest(), timeout=60)
        )
    seen["during_idle_flood_s"] = round(time.monotonic() - began, 2)
    for s in idle:
        s.close()

    with channel("reader") as ch:
        device = device_pb2_grpc.DeviceServiceStub(ch)
        version = device.Version(system_pb2.VersionRequest(), timeout=20)
        seen["after"] = {
            "os_version": version.os_version,
            "running_slot": system_pb2.Slot.Name(version.running_slot),
        }
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
