#!/usr/bin/env python3
"""lserve-worker's observability, end to end with real processes on 127.0.0.1:

* `promtool check metrics` finds nothing to complain about in the scraped exposition;
* a real Prometheus server scrapes the worker and answers PromQL on the TTFT histogram;
* a server-reflection client lists the worker's services.

Usage: observability_test.py WORKER_BINARY LSERVE_CLIENT_BINARY
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

DEADLINE_S = 60


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, check, timeout=DEADLINE_S):
    give_up = time.time() + timeout
    while time.time() < give_up:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def read_ports(path):
    try:
        with open(path) as f:
            return dict(line.strip().split("=") for line in f if "=" in line)
    except FileNotFoundError:
        return None


def http_get(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def list_services(address):
    import grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        for response in stub.ServerReflectionInfo(iter([request]), timeout=10):
            return sorted(s.name for s in response.list_services_response.service)
    return []


def main():
    worker_binary, client_binary = sys.argv[1], sys.argv[2]
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        port_file = os.path.join(tmp, "ports")
        worker = subprocess.Popen(
            [worker_binary, "--listen=127.0.0.1:0", "--metrics_listen=127.0.0.1:0",
             f"--port_file={port_file}", "--threads=2"],
            stdout=open(os.path.join(tmp, "worker.log"), "w"), stderr=subprocess.STDOUT)
        prometheus = None
        try:
            ports = wait_for("the worker's port file", lambda: read_ports(port_file))
            grpc_address = f"127.0.0.1:{ports['grpc_port']}"
            metrics_url = f"http://127.0.0.1:{ports['metrics_port']}/metrics"
            for i in range(5):
                subprocess.run([client_binary, "generate", f"--target={grpc_address}",
                                f"--prompt_ids=1,{i + 2},3", "--max_tokens=8"],
                               check=True, timeout=DEADLINE_S, capture_output=True)

            exposition = http_get(metrics_url)
            lint = subprocess.run(["promtool", "check", "metrics"], input=exposition, text=True,
                                  capture_output=True, timeout=DEADLINE_S)
            problems = (lint.stdout + lint.stderr).strip()
            print(f"promtool check metrics: rc={lint.returncode} {problems or '(no problems)'}")
            if lint.returncode != 0 or problems:
                failures.append("promtool reports problems")
            if "lserve_time_to_first_token_seconds_count 5" not in exposition:
                failures.append("the TTFT histogram does not count the 5 requests")

            prom_port = free_port()
            config = os.path.join(tmp, "prometheus.yml")
            with open(config, "w") as f:
                f.write("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                        "  - job_name: lserve-worker\n"
                        f"    static_configs:\n      - targets: ['127.0.0.1:{ports['metrics_port']}']\n")
            prometheus = subprocess.Popen(
                ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp}/tsdb",
                 f"--web.listen-address=127.0.0.1:{prom_port}"],
                stdout=open(os.path.join(tmp, "prometheus.log"), "w"), stderr=subprocess.STDOUT)
            query = "sum(lserve_time_to_first_token_seconds_count{job=\"lserve-worker\"})"
            url = (f"http://127.0.0.1:{prom_port}/api/v1/query?"
                   + urllib.parse.urlencode({"query": query}))

            def answered():
                try:
                    result = json.loads(http_get(url))["data"]["result"]
                    return result and float(result[0]["value"][1]) == 5.0
                except Exception:
                    return False

            try:
                wait_for("Prometheus to answer the TTFT query", answered)
                print(f"prometheus answered {query} = 5")
            except AssertionError as error:
                failures.append(str(error))

            try:
                services = list_services(grpc_address)
                print("reflection lists:", ", ".join(services))
                for wanted in ("lserve.v1.Generation", "lserve.v1.Worker", "grpc.health.v1.Health",
                               "grpc.reflection.v1alpha.ServerReflection"):
                    if wanted not in services:
                        failures.append(f"reflection does not list {wanted}")
            except ImportError as error:
                failures.append(f"grpcio-reflection is missing: {error}")
        finally:
            if prometheus is not None:
                prometheus.terminate()
                prometheus.wait(timeout=DEADLINE_S)
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=DEADLINE_S)
        if worker.returncode != 0:
            failures.append(f"the worker exited with {worker.returncode}")
    for failure in failures:
        print("FAIL", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
