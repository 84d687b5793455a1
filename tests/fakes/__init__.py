"""Local fakes of cloud APIs, served on 127.0.0.1 for tests."""
