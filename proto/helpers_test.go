package proto

import "crypto/ed25519"

type ed25519PublicKey = ed25519.PublicKey

func pub(s Signer) ed25519.PublicKey { return s.Key.Public().(ed25519.PublicKey) }
