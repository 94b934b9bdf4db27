"""The project's test lab: network namespaces, a real DNS server, and a simulated cluster."""
