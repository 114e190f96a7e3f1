"""The Alibaba Cloud IoT RPC dialect (API 2018-01-20): signatures, actions and errors."""
