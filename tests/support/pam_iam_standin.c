/*
 * pam_iam_standin.c - PAM module used by the local "Aurora PostgreSQL with
 * IAM database authentication" stand-in (tests/support/standin.py).
 *
 * PostgreSQL's `pam` authentication method asks the client for a cleartext
 * password (AuthenticationCleartextPassword) and hands it to PAM through its
 * conversation function.  This module forwards the user name and that
 * password - an RDS IAM auth token - to a verifier process listening on a
 * unix socket and turns its one-byte verdict into PAM_SUCCESS/PAM_AUTH_ERR.
 *
 * Why not pam_exec.so expose_authtok: Linux-PAM truncates the token it
 * passes to 511 bytes (PAM_MAX_RESP_SIZE), and IAM tokens made with session
 * credentials are well over 1000 bytes.  This module therefore calls the
 * application's conversation function itself (no pam_get_authtok, no
 * pam_prompt) and never truncates.
 *
 * Module arguments:
 *   socket=/abs/path   unix socket of the verifier (required)
 *
 * Wire format (module -> verifier), all lengths 4-byte big-endian:
 *   u32 user_len, user bytes, u32 password_len, password bytes
 * Reply (verifier -> module): one byte, 'Y' = accept, anything else = refuse.
 * Any error (no socket, timeout, short read) refuses.
 *
 * Build: gcc -shared -fPIC -O2 -o pam_iam_standin.so pam_iam_standin.c -lpam
 */
#define PAM_SM_AUTH
#define PAM_SM_ACCOUNT

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include <security/pam_appl.h>
#include <security/pam_modules.h>

#define IO_TIMEOUT_SECONDS 30
#define MAX_FIELD_LEN (1024 * 1024)

/* Return the value of the "socket=" module argument, or NULL. */
static const char *socket_path_arg(int argc, const char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "socket=", 7) == 0 && argv[i][7] != '\0')
            return argv[i] + 7;
    }
    return NULL;
}

/*
 * Ask the application (PostgreSQL) for the password with one
 * PAM_PROMPT_ECHO_OFF message.  On success *out is a malloc'd copy that the
 * caller must wipe and free.
 */
static int ask_password(pam_handle_t *pamh, char **out)
{
    const struct pam_conv *conv = NULL;
    struct pam_message msg;
    const struct pam_message *msgp = &msg;
    struct pam_response *resp = NULL;
    int rc;

    *out = NULL;
    rc = pam_get_item(pamh, PAM_CONV, (const void **)&conv);
    if (rc != PAM_SUCCESS || conv == NULL || conv->conv == NULL)
        return PAM_AUTH_ERR;

    msg.msg_style = PAM_PROMPT_ECHO_OFF;
    msg.msg = "Password: ";
    rc = conv->conv(1, &msgp, &resp, conv->appdata_ptr);
    if (rc != PAM_SUCCESS || resp == NULL) {
        free(resp);
        return PAM_AUTH_ERR;
    }
    *out = resp[0].resp; /* ownership moves to the caller */
    free(resp);
    return *out != NULL ? PAM_SUCCESS : PAM_AUTH_ERR;
}

/* Write all of buf; 0 on success, -1 on error. */
static int write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len > 0) {
        ssize_t n = send(fd, p, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        p += n;
        len -= (size_t)n;
    }
    return 0;
}

/* Send one length-prefixed field. */
static int write_field(int fd, const char *s)
{
    size_t len = strlen(s);
    unsigned char hdr[4];

    if (len > MAX_FIELD_LEN)
        return -1;
    hdr[0] = (unsigned char)(len >> 24);
    hdr[1] = (unsigned char)(len >> 16);
    hdr[2] = (unsigned char)(len >> 8);
    hdr[3] = (unsigned char)len;
    if (write_all(fd, hdr, sizeof hdr) != 0)
        return -1;
    return write_all(fd, s, len);
}

/* Connect to the verifier's unix socket; returns fd or -1. */
static int connect_verifier(const char *path)
{
    struct sockaddr_un addr;
    struct timeval tv = { IO_TIMEOUT_SECONDS, 0 };
    int fd;

    if (strlen(path) >= sizeof addr.sun_path)
        return -1;
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    memset(&addr, 0, sizeof addr);
    addr.sun_family = AF_UNIX;
    strcpy(addr.sun_path, path);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* Ask the verifier; returns 1 when it accepts, 0 otherwise. */
static int verifier_accepts(const char *path, const char *user,
                            const char *password)
{
    char verdict = 0;
    ssize_t n;
    int fd = connect_verifier(path);

    if (fd < 0)
        return 0;
    if (write_field(fd, user) != 0 || write_field(fd, password) != 0) {
        close(fd);
        return 0;
    }
    do {
        n = recv(fd, &verdict, 1, 0);
    } while (n < 0 && errno == EINTR);
    close(fd);
    return n == 1 && verdict == 'Y';
}

PAM_EXTERN int pam_sm_authenticate(pam_handle_t *pamh, int flags, int argc,
                                   const char **argv)
{
    const char *path = socket_path_arg(argc, argv);
    const char *user = NULL;
    char *password = NULL;
    int ok;

    (void)flags;
    if (path == NULL)
        return PAM_AUTH_ERR;
    if (pam_get_user(pamh, &user, NULL) != PAM_SUCCESS || user == NULL)
        return PAM_AUTH_ERR;
    if (ask_password(pamh, &password) != PAM_SUCCESS)
        return PAM_AUTH_ERR;

    ok = verifier_accepts(path, user, password);

    memset(password, 0, strlen(password));
    free(password);
    return ok ? PAM_SUCCESS : PAM_AUTH_ERR;
}

PAM_EXTERN int pam_sm_setcred(pam_handle_t *pamh, int flags, int argc,
                              const char **argv)
{
    (void)pamh; (void)flags; (void)argc; (void)argv;
    return PAM_SUCCESS;
}

PAM_EXTERN int pam_sm_acct_mgmt(pam_handle_t *pamh, int flags, int argc,
                                const char **argv)
{
    (void)pamh; (void)flags; (void)argc; (void)argv;
    return PAM_SUCCESS;
}
