package main

import "crypto/x509"

// verifyOptions builds x509 verification options with the bundle as roots and the rest
// of the SVID chain as intermediates.
func verifyOptions(intermediates, roots []*x509.Certificate) x509.VerifyOptions {
	rootPool := x509.NewCertPool()
	for _, c := range roots {
		rootPool.AddCert(c)
	}
	interPool := x509.NewCertPool()
	for _, c := range intermediates {
		interPool.AddCert(c)
	}
	return x509.VerifyOptions{
		Roots:         rootPool,
		Intermediates: interPool,
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	}
}
