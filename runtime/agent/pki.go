// SPDX-License-Identifier: Apache-2.0

package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// The files of a host's identity, in its PKI directory
// (/etc/migros/pki): the CA every agent trusts, and the host's
// certificate and key, which it presents as a server and as a client.
const (
	CAFile   = "ca.pem"
	CertFile = "agent.pem"
	KeyFile  = "agent-key.pem"
)

// caKeyFile is the CA's key; it stays where Init made it.
const caKeyFile = "ca-key.pem"

// Host is a host an agent runs on: its name and the addresses agents
// reach it at, which its certificate names.
type Host struct {
	Name string
	IPs  []net.IP
}

// Init makes, in dir, a CA (unless dir has one: hosts can be added later)
// and, for each host, the directory dir/NAME holding what the host's
// /etc/migros/pki needs: the CA's certificate, and the host's certificate
// and key, valid for its name and addresses, as server and as client, for
// validity.
func Init(dir string, hosts []Host, validity time.Duration) error {
	if len(hosts) == 0 {
		return errors.New("no host given")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	ca, caKey, err := loadCA(dir)
	if errors.Is(err, os.ErrNotExist) {
		ca, caKey, err = newCA(dir, validity)
	}
	if err != nil {
		return fmt.Errorf("CA in %s: %w", dir, err)
	}
	for _, h := range hosts {
		if h.Name == "" || filepath.Base(h.Name) != h.Name {
			return fmt.Errorf("host name %q: not a plain name", h.Name)
		}
		if err := issue(filepath.Join(dir, h.Name), h, ca, caKey, validity); err != nil {
			return fmt.Errorf("host %s: %w", h.Name, err)
		}
	}
	return nil
}

func newKey() (*ecdsa.PrivateKey, error) { return ecdsa.GenerateKey(elliptic.P256(), rand.Reader) }

func serial() (*big.Int, error) { return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127)) }

func newCA(dir string, validity time.Duration) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "MigrOS agents CA"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	if err := writePair(dir, CAFile, caKeyFile, der, key); err != nil {
		return nil, nil, err
	}
	ca, err := x509.ParseCertificate(der)
	return ca, key, err
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, CAFile), filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, nil, err
	}
	key, ok := pair.PrivateKey.(*ecdsa.PrivateKey)
	if !ok {
		return nil, nil, errors.New("the CA's key is not an ECDSA key")
	}
	ca, err := x509.ParseCertificate(pair.Certificate[0])
	return ca, key, err
}

func issue(dir string, h Host, ca *x509.Certificate, caKey *ecdsa.PrivateKey, validity time.Duration) error {
	key, err := newKey()
	if err != nil {
		return err
	}
	sn, err := serial()
	if err != nil {
		return err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: h.Name},
		DNSNames:     []string{h.Name},
		IPAddresses:  h.IPs,
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writePair(dir, CertFile, KeyFile, der, key); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, CAFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.Raw}), 0o644)
}

func writePair(dir, certFile, keyFile string, der []byte, key *ecdsa.PrivateKey) error {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, keyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, certFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}

// Identity is a host's TLS identity, loaded from its PKI directory.
type Identity struct {
	cert tls.Certificate
	cas  *x509.CertPool
}

// LoadIdentity reads the identity in dir (CAFile, CertFile, KeyFile).
func LoadIdentity(dir string) (*Identity, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile))
	if err != nil {
		return nil, fmt.Errorf("this host's agent identity in %s (made by migros agent init): %w", dir, err)
	}
	b, err := os.ReadFile(filepath.Join(dir, CAFile))
	if err != nil {
		return nil, fmt.Errorf("the agents' CA: %w", err)
	}
	cas := x509.NewCertPool()
	if !cas.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("the agents' CA: no certificate in %s", filepath.Join(dir, CAFile))
	}
	return &Identity{cert: cert, cas: cas}, nil
}

// ServerTLS accepts only clients with a certificate of the agents' CA.
func (id *Identity) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    id.cas,
	}
}

// ClientTLS presents the host's certificate and accepts only servers with
// a certificate of the agents' CA for the address dialled.
func (id *Identity) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{id.cert},
		RootCAs:      id.cas,
	}
}
