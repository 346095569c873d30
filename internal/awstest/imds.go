package awstest

import (
	"encoding/json"
	"net/http"
	"strings"
	"sync"
	"time"
)

// IMDS is an instance metadata service (IMDSv2 only: a PUT for a session token, then GETs that
// carry it) for one instance, as much of it as bansshee reads: the instance id, the region (the
// identity document) and each interface's VPC CIDR blocks.
type IMDS struct {
	InstanceID string
	Region     string
	MAC        string
	VPC4, VPC6 []string
	// Role and AccessKeyID: the instance profile's credentials (the SDK's default chain reads
	// them when no others are configured).
	Role, AccessKeyID string

	mu   sync.Mutex
	gets int
}

const imdsToken = "bansshee-imds-token"

// Gets counts the metadata reads that carried a valid token.
func (m *IMDS) Gets() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gets
}

func (m *IMDS) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPut && r.URL.Path == "/latest/api/token" {
		if r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds") == "" {
			http.Error(w, "missing ttl", http.StatusBadRequest)
			return
		}
		w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600")
		w.Write([]byte(imdsToken))
		return
	}
	if r.Method != http.MethodGet || r.Header.Get("X-Aws-Ec2-Metadata-Token") != imdsToken {
		http.Error(w, "", http.StatusUnauthorized)
		return
	}
	m.mu.Lock()
	m.gets++
	m.mu.Unlock()
	mac := m.MAC
	if mac == "" {
		mac = "0e:00:00:00:00:01"
	}
	macs := "/latest/meta-data/network/interfaces/macs/"
	switch p := r.URL.Path; {
	case p == "/latest/meta-data/instance-id":
		w.Write([]byte(m.InstanceID))
	case p == "/latest/dynamic/instance-identity/document":
		_ = json.NewEncoder(w).Encode(map[string]string{"instanceId": m.InstanceID, "region": m.Region, "accountId": "000000000000"})
	case p == "/latest/meta-data/placement/region":
		w.Write([]byte(m.Region))
	case p == "/latest/meta-data/iam/security-credentials/" && m.Role != "":
		w.Write([]byte(m.Role))
	case p == "/latest/meta-data/iam/security-credentials/"+m.Role && m.Role != "":
		_ = json.NewEncoder(w).Encode(map[string]string{"Code": "Success", "Type": "AWS-HMAC", "AccessKeyId": m.AccessKeyID,
			"SecretAccessKey": "imds-secret", "Token": "imds-session-token", "LastUpdated": time.Now().UTC().Format(time.RFC3339),
			"Expiration": time.Now().Add(6 * time.Hour).UTC().Format(time.RFC3339)})
	case p == macs:
		w.Write([]byte(mac + "/"))
	case p == macs+mac+"/vpc-ipv4-cidr-blocks" && len(m.VPC4) > 0:
		w.Write([]byte(strings.Join(m.VPC4, "\n")))
	case p == macs+mac+"/vpc-ipv6-cidr-blocks" && len(m.VPC6) > 0:
		w.Write([]byte(strings.Join(m.VPC6, "\n")))
	default:
		http.NotFound(w, r)
	}
}
