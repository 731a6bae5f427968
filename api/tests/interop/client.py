"""A client that is not ours: Python grpcio with stubs that protoc made from the shipped .proto
files. Calls Version, Health and a Logs stream as a reader, tries Reboot (which a reader may not),
and prints what it saw as one JSON object.

usage: client.py HOST:PORT CERT_DIR   (CERT_DIR holds ca.pem, reader.pem, reader.key)
"""

import json
import sys

import grpc

from cairn.v1 import device_pb2_grpc, services_pb2, system_pb2


def main():
    address, certs = sys.argv[1], sys.argv[2]

    def read(name):
        with open(f"{certs}/{name}", "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read("ca.pem"),
        private_key=read("reader.key"),
        certificate_chain=read("reader.pem"),
    )
    options = [
        # The server certificate names localhost; the address is 127.0.0.1.
        ("grpc.ssl_target_name_override", "localhost"),
        ("grpc.enable_http_proxy", 0),
    ]
    with grpc.secure_channel(address, credentials, options=options) as channel:
        device = device_pb2_grpc.DeviceServiceStub(channel)
        version = device.Version(system_pb2.VersionRequest(), timeout=10)
        health = device.Health(system_pb2.HealthRequest(), timeout=10)
        logs = device.Logs(
            services_pb2.LogsRequest(kernel=services_pb2.KernelLog(), tail=2), timeout=10
        )
        lines = [entry.line for entry in logs]
        try:
            device.Reboot(system_pb2.RebootRequest(), timeout=10)
            reboot = "allowed"
        except grpc.RpcError as e:
            reboot = f"{e.code().name}: {e.details()}"

    print(
        json.dumps(
            {
                "os_version": version.os_version,
                "arch": version.arch,
                "running_slot": system_pb2.Slot.Name(version.running_slot),
                "api_version": version.api_version,
                "healthy": health.healthy,
                "checks": [
                    [c.name, system_pb2.CheckState.Name(c.state), c.detail] for c in health.checks
                ],
                "log_lines": lines,
                "reboot": reboot,
            }
        )
    )


if __name__ == "__main__":
    main()
