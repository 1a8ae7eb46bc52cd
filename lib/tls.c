/* placeholder: being written by the tls owner */
