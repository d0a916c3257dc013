"""One controller per kind (and the SmtpServer's DNS side); `..runtime.Runtime` builds and wires them."""
