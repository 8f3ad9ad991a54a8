"""Ports for the servers the tests start: never from the range outgoing connections draw from."""

import socket

from bench.ports import ephemeral_start, free_port


def test_free_ports_lie_below_the_ephemeral_range_and_are_not_reused():
    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)  # two servers started one after the other never collide
    assert all(1024 <= p < ephemeral_start() for p in ports)
    with socket.socket() as s:  # and the port is free on every interface
        s.bind(("0.0.0.0", ports[0]))
