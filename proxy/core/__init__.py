"""Pure RFC 9111 / 9110 code: header parsers, stored-response models, policy, record codec."""
