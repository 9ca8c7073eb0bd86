// sds-client speaks Envoy's SDS v3 to KeyGrid's agent with the generated Go types of
// go-control-plane (Envoy's published protos), as Envoy/Istio would, and prints what it saw
// as one JSON object. Built and run by integration/tests/sds.rs.
//
// Sequence on one StreamSecrets stream: request "default" and "ROOTCA" with an Istio-like
// node; ACK; NACK; wait for the pushed rotation; a stale-nonce request (ignored); a name
// change (answered). Then a second stream asking for an unknown name (refused), and a
// FetchSecrets for "ROOTCA".
package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"flag"
	"fmt"
	"os"
	"sort"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tls "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secret "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	grpcstatus "google.golang.org/grpc/status"
)

const secretType = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "sds-client: "+format+"\n", args...)
	os.Exit(1)
}

// summary describes one DiscoveryResponse.
type summary struct {
	Version string            `json:"version"`
	Nonce   string            `json:"nonce"`
	Names   []string          `json:"names"`
	Serial  string            `json:"serial,omitempty"`
	ID      string            `json:"spiffe_id,omitempty"`
	Kinds   map[string]string `json:"kinds"`
	TDs     []string          `json:"trust_domains,omitempty"`
}

func summarize(res *discovery.DiscoveryResponse) summary {
	s := summary{Version: res.VersionInfo, Nonce: res.Nonce, Kinds: map[string]string{}}
	for _, a := range res.Resources {
		if a.TypeUrl != secretType {
			fail("resource type %q", a.TypeUrl)
		}
		var sec tls.Secret
		if err := a.UnmarshalTo(&sec); err != nil {
			fail("decode Secret: %v", err)
		}
		s.Names = append(s.Names, sec.Name)
		switch t := sec.Type.(type) {
		case *tls.Secret_TlsCertificate:
			s.Kinds[sec.Name] = "tls_certificate"
			chain := t.TlsCertificate.CertificateChain.GetInlineBytes()
			block, _ := pem.Decode(chain)
			if block == nil {
				fail("certificate chain is not PEM")
			}
			cert, err := x509.ParseCertificate(block.Bytes)
			if err != nil {
				fail("parse leaf: %v", err)
			}
			s.Serial = cert.SerialNumber.Text(16)
			if len(cert.URIs) == 1 {
				s.ID = cert.URIs[0].String()
			}
			keyBlock, _ := pem.Decode(t.TlsCertificate.PrivateKey.GetInlineBytes())
			if keyBlock == nil || keyBlock.Type != "PRIVATE KEY" {
				fail("private key is not PKCS#8 PEM")
			}
			if _, err := x509.ParsePKCS8PrivateKey(keyBlock.Bytes); err != nil {
				fail("private key: %v", err)
			}
		case *tls.Secret_ValidationContext:
			vc := t.ValidationContext
			if cv := vc.GetCustomValidatorConfig(); cv != nil {
				s.Kinds[sec.Name] = "spiffe_validator:" + cv.Name
				var cfg tls.SPIFFECertValidatorConfig
				if err := cv.TypedConfig.UnmarshalTo(&cfg); err != nil {
					fail("decode SPIFFECertValidatorConfig: %v", err)
				}
				for _, td := range cfg.TrustDomains {
					s.TDs = append(s.TDs, td.Name)
					if _, err := x509.ParseCertificate(mustPEM(td.TrustBundle.GetInlineBytes())); err != nil {
						fail("trust bundle: %v", err)
					}
				}
			} else if vc.GetTrustedCa() != nil {
				s.Kinds[sec.Name] = "trusted_ca"
			}
		}
	}
	sort.Strings(s.Names)
	return s
}

func mustPEM(b []byte) []byte {
	block, _ := pem.Decode(b)
	if block == nil {
		fail("not PEM")
	}
	return block.Bytes
}

func node() *core.Node {
	return &core.Node{
		Id:      "sidecar~10.244.1.17~api-6c9f7d8b5-x2x7k.payments~payments.svc.cluster.local",
		Cluster: "api.payments",
		UserAgentVersionType: &core.Node_UserAgentBuildVersion{UserAgentBuildVersion: &core.BuildVersion{
			Version: &typev3.SemanticVersion{MajorNumber: 1, MinorNumber: 36, Patch: 0},
		}},
		UserAgentName: "envoy",
	}
}

func main() {
	socket := flag.String("socket", "", "agent socket path")
	timeout := flag.Duration("timeout", 60*time.Second, "overall deadline")
	flag.Parse()
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	conn, err := grpc.NewClient("unix://"+*socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		fail("dial: %v", err)
	}
	defer conn.Close()
	client := secret.NewSecretDiscoveryServiceClient(conn)
	out := map[string]any{}

	stream, err := client.StreamSecrets(ctx)
	if err != nil {
		fail("StreamSecrets: %v", err)
	}
	responses := make(chan *discovery.DiscoveryResponse, 16)
	go func() {
		for {
			res, err := stream.Recv()
			if err != nil {
				close(responses)
				return
			}
			responses <- res
		}
	}()
	next := func(what string) summary {
		select {
		case res, ok := <-responses:
			if !ok {
				fail("stream ended while waiting for %s", what)
			}
			return summarize(res)
		case <-ctx.Done():
			fail("timed out waiting for %s", what)
		}
		return summary{}
	}
	send := func(req *discovery.DiscoveryRequest) {
		req.TypeUrl = secretType
		if err := stream.Send(req); err != nil {
			fail("send: %v", err)
		}
	}

	names := []string{"default", "ROOTCA"}
	send(&discovery.DiscoveryRequest{Node: node(), ResourceNames: names})
	first := next("the first response")
	out["first"] = first
	// ACK, then NACK the same response (as Envoy does when it cannot apply it).
	send(&discovery.DiscoveryRequest{VersionInfo: first.Version, ResponseNonce: first.Nonce, ResourceNames: names})
	send(&discovery.DiscoveryRequest{VersionInfo: "", ResponseNonce: first.Nonce, ResourceNames: names,
		ErrorDetail: &status.Status{Code: 3, Message: "test NACK: cannot apply"}})
	// Neither produces a response; the next one is the pushed rotation.
	rotated := next("the pushed rotation")
	out["rotated"] = rotated
	send(&discovery.DiscoveryRequest{VersionInfo: rotated.Version, ResponseNonce: rotated.Nonce, ResourceNames: names})
	// A request with a stale nonce is ignored, even though it changes the names.
	send(&discovery.DiscoveryRequest{VersionInfo: first.Version, ResponseNonce: "0badbeef", ResourceNames: []string{"ROOTCA"}})
	// A current request that changes the names is answered.
	send(&discovery.DiscoveryRequest{VersionInfo: rotated.Version, ResponseNonce: rotated.Nonce, ResourceNames: []string{"default"}})
	var after []summary
	for {
		s := next("the answer to the name change")
		after = append(after, s)
		if len(s.Names) == 1 || len(after) > 3 {
			break
		}
	}
	out["after_name_change"] = after
	stream.CloseSend()

	// Unknown names end the stream with InvalidArgument.
	bad, err := client.StreamSecrets(ctx)
	if err != nil {
		fail("StreamSecrets: %v", err)
	}
	if err := bad.Send(&discovery.DiscoveryRequest{Node: node(), TypeUrl: secretType,
		ResourceNames: []string{"default", "file-root:/etc/certs/root-cert.pem"}}); err != nil {
		fail("send: %v", err)
	}
	_, err = bad.Recv()
	st, _ := grpcstatus.FromError(err)
	out["unknown_name"] = map[string]any{"code": st.Code().String(), "message": st.Message()}

	// FetchSecrets (unary).
	fetched, err := client.FetchSecrets(ctx, &discovery.DiscoveryRequest{Node: node(), TypeUrl: secretType,
		ResourceNames: []string{"ROOTCA"}})
	if err != nil {
		fail("FetchSecrets: %v", err)
	}
	out["fetched"] = summarize(fetched)

	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		fail("encode: %v", err)
	}
}
