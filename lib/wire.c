/* placeholder: being written by the wire owner */
