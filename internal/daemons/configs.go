package daemons

// configs are the daemons' configuration files, by path under the server's directory. Each is the
// package's default with only what a test needs changed: where to listen, where to keep state,
// the test account, plaintext logins over the lab (no TLS), and no chroot (so /dev/log is ours).
var configs = map[string]string{
	"ssh/sshd_config": `# Debian's defaults (UsePAM, no keyboard-interactive) plus a lab listener.
Port 22
ListenAddress {{.IP4}}
ListenAddress {{.IP6}}
HostKey {{.Dir}}/ssh/host_ed25519
PidFile {{.Dir}}/ssh/sshd.pid
KbdInteractiveAuthentication no
UsePAM yes
PasswordAuthentication yes
DenyUsers denied-user
`,
	"ssh/sshd_keyonly_config": `# The cloud images' default: keys only (PasswordAuthentication no), everything else Debian's.
Port 2222
ListenAddress {{.IP4}}
ListenAddress {{.IP6}}
HostKey {{.Dir}}/ssh/host_ed25519
PidFile {{.Dir}}/ssh/sshd_keyonly.pid
KbdInteractiveAuthentication no
PasswordAuthentication no
UsePAM yes
AuthorizedKeysFile {{.Dir}}/ssh/authorized_keys_%u
StrictModes no
`,
	"dovecot2/dovecot.conf": `# A second Dovecot writing its own log file (log_path), as many mail hosts are set up.
base_dir = {{.Dir}}/dovecot2/run
state_dir = {{.Dir}}/dovecot2/state
instance_name = dovecot2
protocols = imap
listen = {{.IP4}}, {{.IP6}}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
log_path = {{.Dir}}/dovecot2/dovecot.log
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{{.Dir}}/mail/%u
passdb {
  driver = passwd-file
  args = {{.Dir}}/dovecot/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home={{.Dir}}/mail/%u
}
service anvil {
  chroot =
}
service imap-login {
  chroot =
  inet_listener imap {
    port = 1143
  }
}
`,
	"dovecot/dovecot.conf": `# Dovecot 2.3 defaults plus auth_verbose, so the auth process's lines are captured too.
base_dir = {{.Dir}}/dovecot/run
state_dir = {{.Dir}}/dovecot/state
protocols = imap
listen = {{.IP4}}, {{.IP6}}
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_verbose = yes
log_path = syslog
syslog_facility = mail
default_login_user = dovenull
default_internal_user = dovecot
mail_location = maildir:{{.Dir}}/mail/%u
passdb {
  driver = passwd-file
  args = {{.Dir}}/dovecot/passwd
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home={{.Dir}}/mail/%u
}
service anvil {
  chroot =
}
service imap-login {
  chroot =
}
`,
	"cyrus/imapd.conf": `# Debian's /etc/imapd.conf essentials, with the lab's own directories and sasldb.
configdirectory: {{.Dir}}/cyrus/conf
proc_path: {{.Dir}}/cyrus/run/proc
mboxname_lockpath: {{.Dir}}/cyrus/run/lock
defaultpartition: default
partition-default: {{.Dir}}/cyrus/spool
servername: mail1
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {{.Dir}}/cyrus/sasldb2
sasl_mech_list: PLAIN LOGIN
lmtpsocket: {{.Dir}}/cyrus/run/lmtp
idlesocket: {{.Dir}}/cyrus/run/idle
notifysocket: {{.Dir}}/cyrus/run/notify
syslog_prefix: cyrus
`,
	"postfix/conf/sasl/smtpd.conf": `pwcheck_method: auxprop
auxprop_plugin: sasldb
sasldb_path: {{.Dir}}/postfix/sasldb2
mech_list: PLAIN LOGIN
`,
	"cyrus/cyrus.conf": `START {
}
SERVICES {
  pop3   cmd="pop3d -C {{.Dir}}/cyrus/imapd.conf" listen="{{.IP4}}:110" prefork=0
  pop3v6 cmd="pop3d -C {{.Dir}}/cyrus/imapd.conf" listen="[{{.IP6}}]:110" prefork=0
}
EVENTS {
}
DAEMON {
}
`,
	"postfix/conf/main.cf": `# Postfix 3.7 with Cyrus SASL and a sasldb (Debian reads sasl/smtpd.conf beside main.cf).
compatibility_level = 3.6
myhostname = mail1.lab.example
mydestination =
inet_interfaces = {{.IP4}}, {{.IP6}}
inet_protocols = all
data_directory = {{.Dir}}/postfix/data
# A queue of this run's own: the package's /var/spool/postfix holds master's lock, which another
# run (or one a killed test left behind) would hold.
queue_directory = {{.Dir}}/postfix/queue
smtpd_sasl_auth_enable = yes
smtpd_sasl_type = cyrus
smtpd_sasl_path = smtpd
smtpd_sasl_local_domain = mail1
smtpd_tls_security_level = none
smtpd_relay_restrictions = permit_sasl_authenticated, reject_unauth_destination
biff = no
`,
	"postfix/conf/master.cf": `# Debian's master.cf without chroot, plus the submission service.
smtp      inet  n       -       n       -       -       smtpd
submission inet n       -       n       -       -       smtpd
  -o syslog_name=postfix/submission
2525      inet  n       -       n       -       -       smtpd
  -o syslog_name=postfix/portlog
  -o smtpd_client_port_logging=yes
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
`,
}
