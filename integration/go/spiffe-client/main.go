// spiffe-client drives KeyGrid's Workload API with go-spiffe, the SPIFFE project's own Go
// library, and prints what it saw as one JSON object on stdout. The Rust conformance
// tests (integration/tests/workload_conformance.rs) build and run it.
//
// Modes:
//
//	x509     X509Source: the SVID and bundle; with -rotations N, waits for N rotations.
//	jwt      JWTSource: a JWT-SVID for -audience, validated locally against the JWT
//	         bundle from FetchJWTBundles and remotely with ValidateJWTSVID.
//	validate ValidateJWTSVID (remote) and jwtsvid.ParseAndValidate (local, with the JWT
//	         bundles) of -token for -audience; each reports ok or the error.
//	bundles  FetchX509Bundles and FetchJWTBundles.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc/status"
)

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "spiffe-client: "+format+"\n", args...)
	os.Exit(1)
}

func emit(v any) {
	enc := json.NewEncoder(os.Stdout)
	if err := enc.Encode(v); err != nil {
		fail("encode output: %v", err)
	}
}

// errInfo reports an error with its gRPC code when it has one.
func errInfo(err error) map[string]any {
	if err == nil {
		return map[string]any{"ok": true}
	}
	out := map[string]any{"ok": false, "error": err.Error()}
	if s, ok := status.FromError(err); ok {
		out["code"] = s.Code().String()
		out["message"] = s.Message()
	}
	return out
}

func main() {
	mode := flag.String("mode", "x509", "x509 | jwt | validate | bundles")
	audience := flag.String("audience", "", "JWT audience")
	token := flag.String("token", "", "JWT-SVID to validate")
	rotations := flag.Int("rotations", 0, "X.509-SVID rotations to wait for")
	timeout := flag.Duration("timeout", 60*time.Second, "overall deadline")
	flag.Parse()

	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()
	// The endpoint comes from SPIFFE_ENDPOINT_SOCKET, as for any SPIFFE workload.
	switch *mode {
	case "x509":
		runX509(ctx, *rotations)
	case "jwt":
		runJWT(ctx, *audience)
	case "validate":
		runValidate(ctx, *token, *audience)
	case "bundles":
		runBundles(ctx)
	default:
		fail("unknown mode %q", *mode)
	}
}

func runX509(ctx context.Context, rotations int) {
	source, err := workloadapi.NewX509Source(ctx)
	if err != nil {
		fail("NewX509Source: %v", err)
	}
	defer source.Close()
	var seen []map[string]any
	record := func() string {
		svid, err := source.GetX509SVID()
		if err != nil {
			fail("GetX509SVID: %v", err)
		}
		bundle, err := source.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
		if err != nil {
			fail("GetX509BundleForTrustDomain: %v", err)
		}
		leaf := svid.Certificates[0]
		// Verify the SVID chains to the bundle the same way a go-spiffe server would.
		if _, err := leaf.Verify(verifyOptions(svid.Certificates[1:], bundle.X509Authorities())); err != nil {
			fail("SVID does not verify against its bundle: %v", err)
		}
		serial := leaf.SerialNumber.Text(16)
		seen = append(seen, map[string]any{
			"spiffe_id":   svid.ID.String(),
			"serial":      serial,
			"not_after":   leaf.NotAfter.Unix(),
			"chain_len":   len(svid.Certificates),
			"authorities": len(bundle.X509Authorities()),
		})
		return serial
	}
	last := record()
	for len(seen) <= rotations {
		select {
		case <-source.Updated():
			svid, err := source.GetX509SVID()
			if err == nil && svid.Certificates[0].SerialNumber.Text(16) != last {
				last = record()
			}
		case <-ctx.Done():
			fail("timed out waiting for rotation %d", len(seen))
		}
	}
	emit(map[string]any{"svids": seen})
}

func runJWT(ctx context.Context, audience string) {
	source, err := workloadapi.NewJWTSource(ctx)
	if err != nil {
		fail("NewJWTSource: %v", err)
	}
	defer source.Close()
	svid, err := source.FetchJWTSVID(ctx, jwtsvid.Params{Audience: audience})
	if err != nil {
		fail("FetchJWTSVID: %v", err)
	}
	token := svid.Marshal()
	local, lerr := jwtsvid.ParseAndValidate(token, source, []string{audience})
	out := map[string]any{
		"spiffe_id": svid.ID.String(),
		"audience":  svid.Audience,
		"expiry":    svid.Expiry.Unix(),
		"token":     token,
		"local":     errInfo(lerr),
	}
	if lerr == nil {
		out["local_spiffe_id"] = local.ID.String()
	}
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	defer client.Close()
	remote, rerr := client.ValidateJWTSVID(ctx, token, audience)
	out["remote"] = errInfo(rerr)
	if rerr == nil {
		out["remote_spiffe_id"] = remote.ID.String()
		out["remote_claims"] = remote.Claims
	}
	emit(out)
}

func runValidate(ctx context.Context, token, audience string) {
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	defer client.Close()
	_, rerr := client.ValidateJWTSVID(ctx, token, audience)
	bundles, err := client.FetchJWTBundles(ctx)
	if err != nil {
		fail("FetchJWTBundles: %v", err)
	}
	_, lerr := jwtsvid.ParseAndValidate(token, bundles, []string{audience})
	emit(map[string]any{"remote": errInfo(rerr), "local": errInfo(lerr)})
}

func runBundles(ctx context.Context) {
	client, err := workloadapi.New(ctx)
	if err != nil {
		fail("workloadapi.New: %v", err)
	}
	defer client.Close()
	x509, err := client.FetchX509Bundles(ctx)
	if err != nil {
		fail("FetchX509Bundles: %v", err)
	}
	jwt, err := client.FetchJWTBundles(ctx)
	if err != nil {
		fail("FetchJWTBundles: %v", err)
	}
	out := map[string]any{}
	for _, b := range x509.Bundles() {
		out["x509:"+b.TrustDomain().IDString()] = len(b.X509Authorities())
	}
	for _, b := range jwt.Bundles() {
		out["jwt:"+b.TrustDomain().IDString()] = len(b.JWTAuthorities())
	}
	emit(out)
}
