"""The AWS IoT control plane (iot 2015-05-28): things, certificates, policies, SigV4 ``iot``."""
