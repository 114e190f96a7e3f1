"""The AWS IoT data-plane dialect (iot-data 2015-05-28): SigV4, routes and errors."""
